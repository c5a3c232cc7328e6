"""The operator's tools, loaded on use: status, metrics, doctor, verify, the Flower page, the command line."""
