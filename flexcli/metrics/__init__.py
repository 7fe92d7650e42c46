"""Sample-quality metrics: FID, IS, KID, precision and recall (torch-fidelity) and CLIP score (open-clip).

Every model weight comes from a local path: nothing is downloaded at run time.
"""
