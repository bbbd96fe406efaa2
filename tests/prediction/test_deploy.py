"""Prediction from an ONNX export: `predict --model` with JAX, Flax, orbax and TensorFlow
unimportable, the same tubes as from the checkpoint, and the online mode (`--stream`) on
raw frames from stdin, from the export and from the checkpoint.

Two tiny demo-size detectors (R3D-10 at widen 0.125, 8x48x48 clips): the demo's tubelet
head and the one-box spatial head, random weights with spread scores, saved as a training
workdir and exported to ONNX once for the module.
"""

import io
import json
import pathlib
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from benchmarks import torch_resnet3d
from stconsist_jax import models
from stconsist_jax.config import config_file
from stconsist_jax.configs import demo
from stconsist_jax.configs import demo_one_box
from stconsist_jax.export import exporter
from stconsist_jax.metrics import tubes
from stconsist_jax.prediction import export_metadata
from stconsist_jax.prediction import frame_predictor
from stconsist_jax.prediction import predict
from stconsist_jax.prediction import stream
from stconsist_jax.training import checkpointing
from stconsist_jax.training import distributed
from stconsist_jax.training import train_step
from tests.prediction import test_predict

pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (the deploy extra)')
pytest.importorskip('jax2onnx', reason='jax2onnx is not installed (the export extra)')

KINDS = ('tubelet', 'one_box')
NUM_FRAMES, SIZE = 30, (120, 160)  # the test video
# Modules the deploy path must not need: made unimportable in the subprocesses, as if not
# installed (`import jax` raises ModuleNotFoundError, `importlib.util.find_spec` is None).
BLOCKED = ('jax', 'jaxlib', 'flax', 'orbax', 'tensorflow', 'ml_collections', 'optax')
# Boxes in the JSON are rounded to 0.01 px: the export's boxes differ from JAX's by float32
# rounding (1e-7 of the frame, 1e-5 px here), so a rounded box may differ by one step.
BOX_TOLERANCE_PX = 0.0101


def _config(kind):
  config = (demo if kind == 'tubelet' else demo_one_box).get_config()
  config.data.name = 'random'
  config.model.widen_factor = 0.125
  config.model.tubelet_flip_test = False  # Exported with it in tests/export; half the cost here.
  # Random weights give short, low-scoring tubes: keep them, to have tubes to compare.
  for group in (config.eval.tubes, config.eval.tubelets):
    group.min_length = 2
    group.min_score = 0.0
  return config


def _save_workdir(kind, path):
  config = _config(kind)
  model = models.build_model(config.model)
  state = train_step.create_train_state(config, model, distributed.make_mesh())
  clip = np.zeros((1, 8, 48, 48, 3), np.uint8)
  # Spread weights and BatchNorm statistics (init's give near-uniform scores: ties).
  variables = torch_resnet3d.random_flax_variables(model, clip, train=False, seed=3)
  state = state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
  config_file.save(config, path)
  ckpt = checkpointing.Checkpointer(path, keep=1, async_save=False)
  ckpt.save(5, state)
  ckpt.wait()
  ckpt.close()


@pytest.fixture(scope='module')
def deployed(tmp_path_factory):
  """kind -> (workdir, ONNX export folder, the checkpoint loaded for prediction)."""
  root = tmp_path_factory.mktemp('deploy')
  found = {}
  for kind in KINDS:
    workdir, export = root / f'{kind}_run', root / f'{kind}_onnx'
    _save_workdir(kind, workdir)
    r = predict.restore_model(workdir, 'latest')
    exporter.export(r, export, exporter.Options('onnx', check=False))
    predictor = frame_predictor.FramePredictor.from_config(
      r.config, r.model, r.variables, batch_size=8, with_boxes=r.with_boxes
    )  # what predict.load builds, without restoring again
    found[kind] = (
      workdir,
      export,
      predict.make_loaded(predictor, r.config, r.class_names, r.model_info),
    )
  return found


@pytest.fixture(scope='module')
def video(tmp_path_factory):
  path = tmp_path_factory.mktemp('video') / 'square.mp4'
  test_predict._write(path, test_predict._moving_square(NUM_FRAMES, SIZE), 'mp4v', 25)
  return path


@pytest.fixture(scope='module')
def blocker(tmp_path_factory):
  """A folder with a sitecustomize.py that makes the BLOCKED packages unimportable."""
  folder = tmp_path_factory.mktemp('blocker')
  (folder / 'sitecustomize.py').write_text(
    'import sys\n'
    f'for name in {BLOCKED!r}:\n'
    '  sys.modules[name] = None  # import raises ModuleNotFoundError\n'
  )
  return folder


def _run_blocked(repo_root, blocker, args, **kwargs):
  env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': f'{blocker}:{repo_root}', 'HOME': '/tmp'}
  return subprocess.run(
    [sys.executable, '-m', 'stconsist_jax.apps.predict', *args],
    cwd=repo_root,
    env=env,
    capture_output=True,
    timeout=120,
    **kwargs,
  )


def test_the_blocker_blocks(repo_root, blocker):
  code = 'import importlib.util\nimport jax'
  env = {'PYTHONPATH': f'{blocker}:{repo_root}'}
  proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
  assert proc.returncode == 1 and 'ModuleNotFoundError' in proc.stderr


@pytest.mark.parametrize('kind', KINDS)
def test_predict_an_onnx_export_without_jax(repo_root, blocker, deployed, video, tmp_path, kind):
  _, export, _ = deployed[kind]
  out = tmp_path / 'out'
  proc = _run_blocked(
    repo_root,
    blocker,
    [f'--model={export / "model.onnx"}', f'--video={video}', f'--output={out}', '--noprogress'],
    text=True,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'onnx export' in proc.stdout and 'onnxruntime' in proc.stdout
  record = json.loads((out / 'square.json').read_text())
  assert record['num_frames'] == NUM_FRAMES and record['tubes']
  assert record['model']['export']['format'] == 'onnx' and record['model']['step'] == 5
  assert test_predict._count_frames(out / 'square.mp4') == NUM_FRAMES


def _predict(loaded, video, out):
  every = predict.default_stride(loaded)
  result = predict.predict_video(loaded, video, out, every=every, progress=False)
  return json.loads(result.json_path.read_text())


@pytest.mark.parametrize('kind', KINDS)
def test_the_export_gives_the_checkpoints_tubes(deployed, video, tmp_path, kind):
  from stconsist_jax.prediction import onnx_predictor  # pylint: disable=g-import-not-at-top

  _, export, loaded = deployed[kind]
  from_export = onnx_predictor.load_export(export, batch_size=8)
  assert from_export.tubelets == loaded.tubelets == (kind == 'tubelet')
  assert from_export.linking == loaded.linking  # the metadata's linking is the config's
  assert from_export.frame_nms_threshold == loaded.frame_nms_threshold
  assert from_export.box_class_names == loaded.box_class_names
  a = _predict(loaded, video, tmp_path / 'jax')
  b = _predict(from_export, video, tmp_path / 'onnx')
  a['settings'].pop('devices'), b['settings'].pop('devices')  # 8 simulated CPUs, onnxruntime 1
  assert a['settings'] == b['settings'] and a['tubes_found'] == b['tubes_found'] > 0
  assert len(a['tubes']) == len(b['tubes']) > 0
  for x, y in zip(a['tubes'], b['tubes']):
    assert (x['label'], x['frames']) == (y['label'], y['frames'])
    np.testing.assert_allclose(x['boxes'], y['boxes'], atol=BOX_TOLERANCE_PX)
    assert x['score'] == pytest.approx(y['score'], abs=2e-5)
  for x, y in zip(a['frames'], b['frames']):
    assert [(t['label'], t['tube']) for t in x['actors']] == [
      (t['label'], t['tube']) for t in y['actors']
    ]
    if x['actors']:
      np.testing.assert_allclose(
        [t['box'] for t in x['actors']], [t['box'] for t in y['actors']], atol=BOX_TOLERANCE_PX
      )


def test_an_export_of_another_format_is_refused_in_one_line(deployed, tmp_path):
  _, export, _ = deployed['one_box']
  meta = json.loads((export / 'metadata.json').read_text())
  meta.update(format='stablehlo', model_file='model.stablehlo')
  (tmp_path / 'metadata.json').write_text(json.dumps(meta))
  from stconsist_jax.prediction import onnx_predictor  # pylint: disable=g-import-not-at-top

  with pytest.raises(onnx_predictor.ExportError) as e:
    onnx_predictor.load_export(tmp_path)
  assert str(e.value) == (
    f'{tmp_path}: a stablehlo export; predict --model runs ONNX exports '
    '(tools/export.py --format=onnx)'
  )
  # A metadata.json that is not the model's (another model's digest): refused too.
  meta = json.loads((export / 'metadata.json').read_text())
  meta['model_sha256'] = '0' * 64
  (tmp_path / 'metadata.json').write_text(json.dumps(meta))
  (tmp_path / 'model.onnx').write_bytes((export / 'model.onnx').read_bytes())
  with pytest.raises(export_metadata.MetadataError, match='does not match its metadata.json'):
    onnx_predictor.load_export(tmp_path)


# ------------------------------------------------------------------ the online mode


def _lines(text):
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def _check_lines(lines, box_classes, size):
  """Every frame once, in order; actors in the frame with a class and a stable tube."""
  *frames, end = lines
  assert [f['frame'] for f in frames] == list(range(NUM_FRAMES))
  assert end['end'] is True
  h, w = size
  spans = {}
  for f in frames:
    assert f['dropped'] == 0 and f['latency_ms'] >= 0 and len(f['top']) == 5
    for a in f['actors']:
      x1, y1, x2, y2 = a['box']
      assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
      assert a['class'] == box_classes[a['label']] and a['tube'] is not None
      first, _, label = spans.setdefault(a['tube'], [f['frame'], f['frame'], a['label']])
      assert label == a['label']  # a tube keeps its class
      spans[a['tube']][1] = f['frame']
  ended = [t for f in lines for t in f['ended']]
  assert ended and len({t['id'] for t in ended}) == len(ended)  # each tube ends once
  for t in ended:
    if t['id'] in spans:  # its actors lie within its span
      first, last, label = spans[t['id']]
      assert t['start'] <= first <= last <= t['end'] and t['label'] == label
  return frames


def test_stream_raw_frames_on_stdin_without_jax(repo_root, blocker, deployed, tmp_path):
  """The tubelet export on raw RGB frames piped to stdin: a JSON line per frame, linked
  causally; the same lines, to the JSON's rounding, as the checkpoint streamed in-process."""
  _, export, loaded = deployed['tubelet']
  frames = test_predict._moving_square(NUM_FRAMES, SIZE)
  proc = _run_blocked(
    repo_root,
    blocker,
    [
      f'--model={export}',
      '--stream=-',
      f'--stream_size={SIZE[0]}x{SIZE[1]}',
      '--report_every=10',
      f'--stream_video={tmp_path / "annotated.mp4"}',
    ],
    input=frames.tobytes(),
  )
  stderr = proc.stderr.decode()
  assert proc.returncode == 0, stderr[-3000:]
  assert stderr.count('over the last 10 frames') == 3  # at frames 9, 19, 29
  assert 'stream: 30 frames read, 30 predicted, 0 dropped' in stderr
  lines = _lines(proc.stdout.decode())
  got = _check_lines(lines, loaded.box_class_names, SIZE)
  assert max(len(f['actors']) for f in got) > 1  # several actors a frame
  assert test_predict._count_frames(tmp_path / 'annotated.mp4') == NUM_FRAMES

  # The checkpoint, in this process: the same frames, actors, tube ids and ended tubes.
  text = _StringOut()
  source = stream.Source(iter(frames), 'frames', bgr=False, live=False, fps=None)
  stream.StreamPredictor(loaded).run(source, text)
  for x, y in zip(lines, _lines(text.getvalue())):
    assert [(a['label'], a['tube']) for a in x.get('actors', [])] == [
      (a['label'], a['tube']) for a in y.get('actors', [])
    ]
    assert [t['id'] for t in x['ended']] == [t['id'] for t in y['ended']]
    if x.get('actors'):
      np.testing.assert_allclose(
        [a['box'] for a in x['actors']], [a['box'] for a in y['actors']], atol=BOX_TOLERANCE_PX
      )


class _StringOut:
  def __init__(self):
    self.parts = []

  def write(self, text):
    self.parts.append(text)

  def flush(self):
    pass

  def getvalue(self):
    return ''.join(self.parts)


def test_stream_cli_errors_are_one_line(repo_root, blocker, deployed, video, tmp_path):
  _, export, _ = deployed['one_box']
  proc = _run_blocked(repo_root, blocker, [f'--model={export}', '--stream=-'], text=True)
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
    'error: --stream=- reads raw RGB frames from stdin: give --stream_size=HxW'
  )
  proc = _run_blocked(
    repo_root,
    blocker,
    [f'--model={export}', '--stream=-', '--stream_size=10x10'],
    input='x' * 7,
    text=True,
  )
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
    'error: stdin ended inside a frame (7 of 300 bytes of a 10x10 RGB frame): is '
    '--stream_size right?'
  )
  proc = _run_blocked(
    repo_root,
    blocker,
    [f'--model={export}', '--workdir=/tmp/w', f'--video={video}', f'--output={tmp_path}'],
    text=True,
  )
  assert proc.returncode == 2 and proc.stderr.strip() == (
    'error: --model runs an export with the settings of its metadata.json: --workdir '
    'cannot be used with it'
  )


@pytest.fixture
def slow_predictor():
  """A one-box ClipPredictor of 4-frame clips that takes 50 ms a clip and keeps the clips
  it saw (frame i is all i, so a clip's pixel is its frame index)."""

  class Slow(frame_predictor.ClipPredictor):
    seen = []

    def _run(self, clips):
      time.sleep(0.05)
      self.seen.append(clips[0, :, 0, 0, 0].tolist())
      return {
        'logits': np.zeros((len(clips), 2), np.float32),
        'boxes': np.tile([[0.25, 0.25, 0.5, 0.5]], (len(clips), 1)).astype(np.float32),
      }

    def _outputs(self, out):
      return out

  return Slow(num_frames=4, frame_size=8, image_size=8)


def _frames(n, delay):
  for i in range(n):
    time.sleep(delay)
    yield np.full((16, 16, 3), i, np.uint8)


def test_a_live_source_drops_what_the_model_cannot_keep_up_with(slow_predictor):
  """Frames every 2 ms to a model of 50 ms: most are dropped, each line says how many
  before it, and a predicted frame's clip is the 4 frames up to it; a file keeps them all."""
  loaded = types.SimpleNamespace(
    predictor=slow_predictor,
    class_names=['a', 'b'],
    box_class_names=None,
    linking=tubes.LinkingConfig(min_length=1, plus_one=False),
    frame_nms_threshold=0.3,
  )
  out = _StringOut()
  source = stream.Source(_frames(60, 0.002), 'live', bgr=False, live=True, fps=None)
  summary = stream.StreamPredictor(loaded).run(source, out)
  lines = _lines(out.getvalue())[:-1]
  predicted = [f['frame'] for f in lines]
  assert summary.frames_read == 60 and predicted[-1] == 59
  assert summary.dropped == sum(f['dropped'] for f in lines) == 60 - len(lines) > 20
  assert all(b - a - 1 == f['dropped'] for a, b, f in zip(predicted, predicted[1:], lines[1:]))
  assert slow_predictor.seen == [[max(f + d, 0) for d in (-3, -2, -1, 0)] for f in predicted]
  # One box a frame, [4, 4, 12, 12] px; its tube of class 'a' (both score 0.5) goes on.
  assert all(f['actors'][0]['box'] == [4.0, 4.0, 12.0, 12.0] for f in lines)
  assert {f['actors'][0]['tube'] for f in lines} == {0}

  slow_predictor.seen.clear()
  out = _StringOut()
  source = stream.Source(_frames(20, 0.0), 'file', bgr=False, live=False, fps=None)
  summary = stream.StreamPredictor(loaded).run(source, out)
  assert [f['frame'] for f in _lines(out.getvalue())[:-1]] == list(range(20))
  assert summary.dropped == 0 and len(slow_predictor.seen) == 20


def test_causal_clips_end_at_the_frame():
  """A one-box clip of 4 frames at stride 2 for frame 7: frames 1, 3, 5, 7; frame 2's
  clamps at 0. A tubelet clip (T = 8, K = 4, p0 = 2) reports its output frame 5: the
  newest frame is 2 later."""
  ring = stream.FrameRing(4, 2, 3)
  for i in range(8):
    ring.push(i, np.full((1,), i))
    if i == 2:
      np.testing.assert_array_equal(ring.clip(2)[:, 0], [0, 0, 0, 2])
  np.testing.assert_array_equal(ring.clip(7)[:, 0], [1, 3, 5, 7])
  assert ring.span == 7  # the frames one clip spans, no more
  p = types.SimpleNamespace(num_frames=8, tubelet_frames=4, frame_stride=1)
  assert stream.report_position(p) == 5 and stream.lag(p) == 2
  p = types.SimpleNamespace(num_frames=8, tubelet_frames=0, frame_stride=2)
  assert stream.report_position(p) == 7 and stream.lag(p) == 0


def test_raw_frames_and_sizes():
  data = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)
  got = list(stream.raw_frames(io.BytesIO(data.tobytes()), (2, 2)))
  np.testing.assert_array_equal(np.stack(got), data)
  assert stream.parse_size('240x320') == (240, 320)
  with pytest.raises(stream.StreamError, match='HEIGHTxWIDTH'):
    stream.parse_size('240,320')
  assert stream.is_live('0') and stream.is_live('rtsp://cam/1') and not stream.is_live('a.mp4')
  assert not stream.is_live('file:///tmp/a.mp4')


def test_the_export_metadata_carries_the_tubelet_settings(deployed):
  _, export, loaded = deployed['tubelet']
  meta = export_metadata.read(export)
  assert meta['tubelet'] == {
    'frames': 8,
    'stride': 4,
    'top_n': 6,
    'nms': 0.5,
    'frame_stride': 4,
    'frame_nms': 0.3,
    'box_class_names': [f'box_class_{i}' for i in range(6)],
    'presence_threshold': 0.5,
  }
  assert meta['linking']['tubelet_nms_threshold'] == loaded.linking.tubelet_nms_threshold
  assert pathlib.Path(meta['source']['path']).name == 'tubelet_run'


@pytest.mark.parametrize(
  'edit, expected',
  [
    (('box_class_names', ['a', 'b']), "output 'det_scores' has shape ['batch', 6, 6]"),
    (('frame_stride', 9), 'tubelet.frame_stride 9 leaves frames between the clips uncovered'),
    (('frame_nms', '0.3'), "tubelet.frame_nms must be float, found '0.3'"),
  ],
)
def test_tubelet_metadata_that_does_not_fit_is_refused(deployed, tmp_path, edit, expected):
  _, export, _ = deployed['tubelet']
  meta = json.loads((export / 'metadata.json').read_text())
  meta['tubelet'][edit[0]] = edit[1]
  (tmp_path / 'metadata.json').write_text(json.dumps(meta))
  with pytest.raises(export_metadata.MetadataError) as e:
    export_metadata.read(tmp_path)
  assert expected in str(e.value) and '\n' not in str(e.value)
