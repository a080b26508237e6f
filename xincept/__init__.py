"""XIncept-ALL: federated Xception + InceptionV3 fusion for ALL blood-smear classification."""

__version__ = "0.1.0"
