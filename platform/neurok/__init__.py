"""NeuROK: generative 4D neural object kinematics."""

__version__ = "0.1.0"
