"""Offline training, evaluation and prediction for petseg on Oxford-IIIT Pet."""
