"""A model of zapbilling's contract (billing.py) and a driver that compares a real server with it
(driver.py); tests/test_model.py runs them. The model is written from docs/api.md and
docs/conventions.md (and the README's "Choices the contract leaves open"), never from the
server's code: nothing here imports zapbilling's billing/ or store/."""
