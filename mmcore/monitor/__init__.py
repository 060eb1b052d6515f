"""The production loop (DESIGN §2b): what comes back after a prediction, such as labels that arrive later."""
