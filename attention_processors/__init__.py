"""diffusers attention processors for Strata's mechanisms, one file per mechanism, and the
controller they all read (the prompt-to-prompt AttentionStore pattern), built from one state object
per mechanism."""

from attention_processors.controller import AttentionController
from attention_processors.install import installed_processors
from attention_processors.mqd import MultiQueryDisentangledProcessor
from attention_processors.regions import RegionState, region_labels
from attention_processors.tokens import token_grid

__all__ = ["AttentionController", "MultiQueryDisentangledProcessor", "RegionState", "installed_processors",
           "region_labels", "token_grid"]
