"""diffusers attention processors for Strata's mechanisms, one file per mechanism, and the
controller they all read (the prompt-to-prompt AttentionStore pattern)."""

from attention_processors.controller import AttentionController, region_labels
from attention_processors.install import installed_processors
from attention_processors.mqd import MultiQueryDisentangledProcessor

__all__ = ["AttentionController", "MultiQueryDisentangledProcessor", "installed_processors", "region_labels"]
