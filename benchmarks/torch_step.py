"""The PyTorch side of the train-step benchmark: the same detector, losses and SGD step.

The backbone is the 3D-ResNets-PyTorch replica of the parity tests, with the study's
Model-2 box head (Linear 512 -> 256 -> 64 -> 8 -> 4, sigmoid) and the four loss terms of
`stconsist_jax.training.losses` (cross-entropy, masked box MSE, Jensen-Shannon and box
consistency between a clip and its flipped copy); the clip and its flip go through one
forward pass, then SGD with momentum 0.9 steps. Batches are generated on the device.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torch_resnet3d import make_torch_resnet

# Kinetics preset of stconsist_jax.models.NORMALIZATION_PRESETS (RGB, applied to 0..1).
KINETICS_MEAN = (0.4345, 0.4051, 0.3775)
KINETICS_STD = (0.2768, 0.2713, 0.2737)
TORCH_DTYPES = {'float32': None, 'bfloat16': torch.bfloat16}
# With torch 2.13 on an AVX512-BF16 CPU, the backward pass under bfloat16 autocast hung or
# corrupted the heap inside oneDNN (1 or 2 threads). With oneDNN off it runs on PyTorch's
# own kernels, far slower than float32 with oneDNN: no fair reference, so CPU
# bfloat16 is skipped unless asked for (`allow_cpu_bf16`).
CPU_BF16_NOTE = 'CPU bfloat16 autocast with oneDNN disabled (its bf16 backward crashed)'
CPU_BF16_SKIPPED = (
  "skipped: CPU bfloat16 autocast crashed in oneDNN's backward pass; "
  '--torch_cpu_bf16 runs it with oneDNN disabled (slow kernels)'
)


class TorchDetector(nn.Module):
  """uint8 clips (N, T, H, W, 3) -> (logits (N, K), boxes (N, 4)), heads in float32."""

  def __init__(
    self,
    depth: int,
    widen_factor: float,
    num_classes: int,
    box_hidden: Sequence[int] = (256, 64, 8),
  ):
    super().__init__()
    self.backbone = make_torch_resnet(depth, widen_factor=widen_factor, n_classes=num_classes)
    layers, width = [], self.backbone.fc.in_features
    for hidden in box_hidden:
      layers.append(nn.Linear(width, hidden))
      width = hidden
    layers.append(nn.Linear(width, 4))
    self.box_head = nn.Sequential(*layers)  # No activation between layers, as in Model-2.
    self.register_buffer('mean', torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1))
    self.register_buffer('std', torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1))

  def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = clip.permute(0, 4, 1, 2, 3).float() / 255.0
    x = (x - self.mean) / self.std
    features = self.backbone.features(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
      features = features.float()
      logits = self.backbone.fc(features)
      boxes = torch.sigmoid(self.box_head(features))
    return logits, boxes


def loss_terms(
  logits: torch.Tensor,
  logits_flip: torch.Tensor,
  boxes: torch.Tensor,
  boxes_flip: torch.Tensor,
  label: torch.Tensor,
  box: torch.Tensor,
  has_box: torch.Tensor,
) -> dict[str, torch.Tensor]:
  """The four terms of `stconsist_jax.training.train_step.loss_terms` (JS consistency), in PyTorch."""
  cls = F.cross_entropy(logits, label)
  mask = has_box.float()
  diff = torch.where(has_box[:, None], boxes - box, torch.zeros_like(boxes))
  loc = (diff**2).mean(-1).sum() / mask.sum().clamp(min=1.0)
  log_p = F.log_softmax(logits, -1)
  log_q = F.log_softmax(logits_flip, -1)
  log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
  js = 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1) + 0.5 * (log_q.exp() * (log_q - log_m)).sum(-1)
  x, y, w, h = boxes.unbind(-1)
  xf, yf, wf, hf = boxes_flip.unbind(-1)
  con_loc = (
    (x + w / 2 - (1.0 - (xf + wf / 2))) ** 2
    + (y + h / 2 - (yf + hf / 2)) ** 2
    + (w - wf) ** 2
    + (h - hf) ** 2
  ) / 4.0
  return {'cls': cls, 'loc': loc, 'con_cls': js.mean(), 'con_loc': con_loc.mean()}


def random_batch(
  batch_size: int,
  num_frames: int,
  image_size: int,
  num_classes: int,
  device: torch.device,
  generator: torch.Generator,
) -> dict[str, torch.Tensor]:
  """A random training batch made on `device`: uint8 clips, labels, half with a box."""
  shape = (batch_size, num_frames, image_size, image_size, 3)
  clip = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)
  xy = 0.5 * torch.rand(batch_size, 2, device=device, generator=generator)
  wh = 0.1 + 0.4 * torch.rand(batch_size, 2, device=device, generator=generator)
  has_box = torch.rand(batch_size, device=device, generator=generator) < 0.5
  box = torch.where(has_box[:, None], torch.cat([xy, wh], 1), torch.zeros(1, device=device))
  label = torch.randint(0, num_classes, (batch_size,), device=device, generator=generator)
  return {'clip': clip, 'label': label, 'box': box, 'has_box': has_box}


def make_step(model: TorchDetector, optimizer: torch.optim.Optimizer, dtype: str):
  """One training step `batch -> loss` (clip and its flip concatenated in one forward)."""
  autocast_dtype = TORCH_DTYPES[dtype]
  device_type = next(model.parameters()).device.type

  def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    clip = batch['clip']
    both = torch.cat([clip, clip.flip(3)], 0)
    optimizer.zero_grad(set_to_none=True)
    context = (
      contextlib.nullcontext()
      if autocast_dtype is None
      else torch.autocast(device_type=device_type, dtype=autocast_dtype)
    )
    with context:
      logits, boxes = model(both)
    n = clip.shape[0]
    terms = loss_terms(
      logits[:n], logits[n:], boxes[:n], boxes[n:], batch['label'], batch['box'], batch['has_box']
    )
    loss = sum(terms.values())
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def torch_device(platform: str) -> torch.device:
  """CUDA when JAX runs on a GPU and PyTorch sees one, else the CPU."""
  if platform == 'gpu' and torch.cuda.is_available():
    return torch.device('cuda')
  return torch.device('cpu')


def cpu_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def measure(
  *,
  depth: int,
  widen_factor: float,
  num_classes: int,
  batch_size: int,
  num_frames: int,
  image_size: int,
  dtype: str,
  steps: int,
  warmup: int,
  device: torch.device,
  seed: int = 0,
  allow_cpu_bf16: bool = False,
) -> dict[str, Any]:
  """Times `steps` training steps after `warmup` untimed ones.

  Returns:
    {'torch_clips_per_s', 'torch_step_time_s', 'torch_threads', 'torch_note'}; a clip
    counts once although it runs through the network twice (itself and its flip). On
    a CPU in bfloat16 without `allow_cpu_bf16` the times are None and the note says why.
  """
  if dtype not in TORCH_DTYPES:
    raise ValueError(f'--dtypes: expected entries from {sorted(TORCH_DTYPES)}, found {dtype!r}')
  torch.set_num_threads(cpu_cores())
  cpu_bf16 = device.type == 'cpu' and dtype == 'bfloat16'
  if cpu_bf16 and not allow_cpu_bf16:
    return {
      'torch_clips_per_s': None,
      'torch_step_time_s': None,
      'torch_threads': torch.get_num_threads(),
      'torch_note': CPU_BF16_SKIPPED,
    }
  context = torch.backends.mkldnn.flags(enabled=False) if cpu_bf16 else contextlib.nullcontext()
  with context:
    result = _time_steps(
      depth=depth,
      widen_factor=widen_factor,
      num_classes=num_classes,
      batch_size=batch_size,
      num_frames=num_frames,
      image_size=image_size,
      dtype=dtype,
      steps=steps,
      warmup=warmup,
      device=device,
      seed=seed,
    )
  return {
    **result,
    'torch_threads': torch.get_num_threads(),
    'torch_note': CPU_BF16_NOTE if cpu_bf16 else None,
  }


def _time_steps(
  *,
  depth: int,
  widen_factor: float,
  num_classes: int,
  batch_size: int,
  num_frames: int,
  image_size: int,
  dtype: str,
  steps: int,
  warmup: int,
  device: torch.device,
  seed: int,
) -> dict[str, float]:
  """Seconds per step and clips/s of `steps` steps after `warmup` untimed ones."""
  if device.type == 'cuda':
    torch.backends.cudnn.benchmark = True
  torch.manual_seed(seed)
  model = TorchDetector(depth, widen_factor, num_classes).to(device).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-3)
  step = make_step(model, optimizer, dtype)
  generator = torch.Generator(device=device).manual_seed(seed)
  batches = [
    random_batch(batch_size, num_frames, image_size, num_classes, device, generator)
    for _ in range(min(steps, 2))
  ]
  sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
  for i in range(warmup):
    step(batches[i % len(batches)])
  sync()
  start = time.perf_counter()
  losses = [step(batches[i % len(batches)]) for i in range(steps)]
  sync()
  elapsed = time.perf_counter() - start
  if not all(torch.isfinite(loss).item() for loss in losses):
    raise FloatingPointError(f'PyTorch step produced a non-finite loss: {losses}')
  return {'torch_clips_per_s': batch_size * steps / elapsed, 'torch_step_time_s': elapsed / steps}
