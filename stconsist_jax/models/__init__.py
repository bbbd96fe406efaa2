"""Models: the 3D-ResNets-PyTorch backbone family, classifier/detector heads, pretrained weights.

Imports core and config (the choices it dispatches on); JAX/Flax only. Import from here.
"""

from stconsist_jax.models.detector import build_model
from stconsist_jax.models.detector import Detector
from stconsist_jax.models.detector import NORMALIZATION_PRESETS
from stconsist_jax.models.detector import normalize
from stconsist_jax.models.detector import VideoClassifier
from stconsist_jax.models.param_trees import ParameterTreeMismatchError
from stconsist_jax.models.pretrained import load_pretrained
from stconsist_jax.models.pretrained import merge_pretrained
from stconsist_jax.models.pretrained import MergeReport
from stconsist_jax.models.resnet3d import ResNet3D

__all__ = [
  'build_model',
  'Detector',
  'NORMALIZATION_PRESETS',
  'normalize',
  'VideoClassifier',
  'load_pretrained',
  'merge_pretrained',
  'MergeReport',
  'ParameterTreeMismatchError',
  'ResNet3D',
]
