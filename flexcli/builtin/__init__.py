"""The built-in default (issue #7): Fashion-MNIST, its base DiT, its domain classifier and the demo job.

fashion_mnist.py     the data (Debian's dataset-fashion-mnist), sized as the models see it; the `fashion-mnist` set
moving_fmnist.py     moving Fashion-MNIST clips for the video default; the `moving-fashion-mnist` set (#15)
train_base.py        pre-training the bases DiT-, PixArt- and Wan-FMNIST (`flexcli builtin train-base`)
check_base.py        class accuracy of the base's samples and a sample grid (`flexcli builtin check-base`)
classifier.py        the CNN: `--features fmnist` (torch-fidelity) and class-conditional accuracy
train_classifier.py  training it (`flexcli builtin train-classifier`)
demo.py              the main job: flexify, distil, sweep, Pareto front (`flexcli demo`)

The weights live in flexcli/assets/. The core packages never import this package: they reach the `fmnist`
features and the `fashion-mnist` training set by name through flexcli.registry.
"""
