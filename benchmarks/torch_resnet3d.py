"""A PyTorch replica of 3D-ResNets-PyTorch's `models/resnet.py`, the reference for parity.

Written from the facts in SPEC.md section 1.1; state_dict keys match the original project's.

Also writes checkpoints in the two published layouts (2017: `module.` prefix, no
`num_batches_tracked`; 2020: plain keys) and fills BatchNorm statistics with non-trivial
random values so that parity tests exercise them. Import with
`from tests.torch_resnet3d import make_torch_resnet` (repo root on sys.path) or load the
file by path.
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

LAYERS = {
  10: ('basic', [1, 1, 1, 1]),
  18: ('basic', [2, 2, 2, 2]),
  34: ('basic', [3, 4, 6, 3]),
  50: ('bottleneck', [3, 4, 6, 3]),
  101: ('bottleneck', [3, 4, 23, 3]),
  152: ('bottleneck', [3, 8, 36, 3]),
  200: ('bottleneck', [3, 24, 36, 3]),
}


def conv3x3x3(in_planes, out_planes, stride=1):
  return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1x1(in_planes, out_planes, stride=1):
  return nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_planes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv3x3x3(in_planes, planes, stride)
    self.bn1 = nn.BatchNorm3d(planes)
    self.conv2 = conv3x3x3(planes, planes)
    self.bn2 = nn.BatchNorm3d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(out + residual)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_planes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv1x1x1(in_planes, planes)
    self.bn1 = nn.BatchNorm3d(planes)
    self.conv2 = conv3x3x3(planes, planes, stride)
    self.bn2 = nn.BatchNorm3d(planes)
    self.conv3 = conv1x1x1(planes, planes * self.expansion)
    self.bn3 = nn.BatchNorm3d(planes * self.expansion)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    residual = x if self.downsample is None else self.downsample(x)
    return F.relu(out + residual)


def downsample_basic_block(x, planes, stride):
  """Shortcut A: `avg_pool3d(kernel 1, stride)`, then zero channels concatenated."""
  out = F.avg_pool3d(x, kernel_size=1, stride=stride)
  zero_pads = torch.zeros(
    out.size(0),
    planes - out.size(1),
    out.size(2),
    out.size(3),
    out.size(4),
    dtype=out.dtype,
    device=out.device,
  )
  return torch.cat([out, zero_pads], dim=1)


class ResNet(nn.Module):
  def __init__(
    self,
    block,
    layers,
    block_inplanes,
    n_input_channels=3,
    conv1_t_size=7,
    conv1_t_stride=1,
    no_max_pool=False,
    shortcut_type='B',
    widen_factor=1.0,
    n_classes=400,
  ):
    super().__init__()
    block_inplanes = [int(x * widen_factor) for x in block_inplanes]
    self.in_planes = block_inplanes[0]
    self.no_max_pool = no_max_pool
    self.conv1 = nn.Conv3d(
      n_input_channels,
      self.in_planes,
      kernel_size=(conv1_t_size, 7, 7),
      stride=(conv1_t_stride, 2, 2),
      padding=(conv1_t_size // 2, 3, 3),
      bias=False,
    )
    self.bn1 = nn.BatchNorm3d(self.in_planes)
    self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, block_inplanes[0], layers[0], shortcut_type)
    self.layer2 = self._make_layer(block, block_inplanes[1], layers[1], shortcut_type, 2)
    self.layer3 = self._make_layer(block, block_inplanes[2], layers[2], shortcut_type, 2)
    self.layer4 = self._make_layer(block, block_inplanes[3], layers[3], shortcut_type, 2)
    self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
    self.fc = nn.Linear(block_inplanes[3] * block.expansion, n_classes)

  def _make_layer(self, block, planes, blocks, shortcut_type, stride=1):
    downsample = None
    if stride != 1 or self.in_planes != planes * block.expansion:
      if shortcut_type == 'A':
        downsample = partial(downsample_basic_block, planes=planes * block.expansion, stride=stride)
      else:
        downsample = nn.Sequential(
          conv1x1x1(self.in_planes, planes * block.expansion, stride),
          nn.BatchNorm3d(planes * block.expansion),
        )
    layers = [block(self.in_planes, planes, stride, downsample)]
    self.in_planes = planes * block.expansion
    for _ in range(1, blocks):
      layers.append(block(self.in_planes, planes))
    return nn.Sequential(*layers)

  def features(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    if not self.no_max_pool:
      x = self.maxpool(x)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.avgpool(x).flatten(1)

  def forward(self, x):
    return self.fc(self.features(x))


def make_torch_resnet(
  depth=34,
  shortcut_type='B',
  widen_factor=1.0,
  n_classes=400,
  conv1_t_size=7,
  conv1_t_stride=1,
  no_max_pool=False,
) -> ResNet:
  """A 3D-ResNets-PyTorch `generate_model(depth, ...)` equivalent (N, C, T, H, W input)."""
  kind, layers = LAYERS[depth]
  block = BasicBlock if kind == 'basic' else Bottleneck
  return ResNet(
    block,
    layers,
    [64, 128, 256, 512],
    conv1_t_size=conv1_t_size,
    conv1_t_stride=conv1_t_stride,
    no_max_pool=no_max_pool,
    shortcut_type=shortcut_type,
    widen_factor=widen_factor,
    n_classes=n_classes,
  )


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights and non-trivial BatchNorm statistics (not mean 0 / var 1).

  Conv weights get a variance-preserving scale so activations neither vanish nor explode
  through deep stacks, which keeps relative logit comparisons meaningful.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.Conv3d):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
      elif isinstance(module, nn.BatchNorm3d):
        n = module.num_features
        module.weight.copy_(0.5 + torch.rand(n, generator=gen))
        module.bias.copy_(0.2 * torch.randn(n, generator=gen))
        module.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
        module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
        module.num_batches_tracked.fill_(7)
      elif isinstance(module, nn.Linear):
        module.weight.copy_(
          torch.randn(module.weight.shape, generator=gen) / module.weight.shape[1] ** 0.5
        )
        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
  return model.eval()


def save_checkpoint(model: nn.Module, path, generation: str, arch: str = 'resnet') -> None:
  """Saves like the published files: '2017' (`module.` keys, no num_batches_tracked,
  {'epoch','arch','state_dict','optimizer'}) or '2020' (plain keys, + 'scheduler')."""
  state = model.state_dict()
  optimizer = {'state': {}, 'param_groups': [{'lr': 0.1, 'momentum': 0.9, 'params': [0, 1]}]}
  if generation == '2017':
    state = {f'module.{k}': v for k, v in state.items() if not k.endswith('num_batches_tracked')}
    payload = {'epoch': 200, 'arch': arch, 'state_dict': state, 'optimizer': optimizer}
  elif generation == '2020':
    payload = {
      'epoch': 200,
      'arch': arch,
      'state_dict': state,
      'optimizer': optimizer,
      'scheduler': {'milestones': [50, 100], 'last_epoch': 200},
    }
  else:
    raise ValueError(f"generation must be '2017' or '2020', got {generation!r}")
  torch.save(payload, path)


def random_flax_variables(model, *args, seed: int = 0, **kwargs) -> dict:
  """Variables for a Flax `model` filled from numpy, without running `model.init`.

  On CPU, `init` compiles a random-number kernel per parameter shape (seconds each);
  this takes the shapes from `jax.eval_shape` and fills them with He-scaled normal
  kernels, BatchNorm scales near 1 and non-trivial running statistics.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.RandomState(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
  out = {}
  for collection, tree in flax.core.unfreeze(shapes).items():
    flat = {}
    for path, leaf in flax.traverse_util.flatten_dict(tree).items():
      shape, name = leaf.shape, path[-1]
      if name == 'kernel':
        value = rng.randn(*shape) * np.sqrt(2.0 / max(1, np.prod(shape[:-1])))
      elif name == 'scale':
        value = 0.5 + rng.rand(*shape)
      elif name == 'var':
        value = 0.5 + rng.rand(*shape)
      else:  # bias, mean
        value = 0.1 * rng.randn(*shape)
      flat[path] = np.asarray(value, leaf.dtype)
    out[collection] = flax.traverse_util.unflatten_dict(flat)
  return out
