"""`flexcli evaluate`: quality vs compute of (schedule, guidance) combinations, as a Pareto front."""
