"""Default configuration: Model-2 on UCF-101 split 1 (all 101 classes), unfrozen, consistency on.

Variants import this module and change a few fields; every field is documented here.
"""

import dataclasses

import ml_collections

from stconsist_jax.metrics import tubelets
from stconsist_jax.metrics import tubes


def get_config() -> ml_collections.ConfigDict:
  """Returns the default training configuration."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Input pipeline (stconsist_jax.data: train_stream, eval_streams). The training stream
  # is a pure function of (seed, step), so resuming restarts it at the restored step.
  config.data = ml_collections.ConfigDict()
  # TFDS name; 'synthetic' = generated videos; 'random' = random arrays, no TF (smoke runs).
  # A bare name reads the config `name/split{split}_{frame_size}`; `name/config` as given.
  config.data.name = 'ucf101_stconsist'
  config.data.data_dir = ''  # TFDS data_dir ('' = TFDS default).
  config.data.split = 1  # UCF-101 train/test split (only 1 has UCF101-24 boxes).
  config.data.frame_size = 128  # Stored frame size of the TFDS builder config.
  config.data.image_size = 128  # Clip height/width fed to the model.
  config.data.num_frames = 16  # Frames per clip.
  config.data.frame_stride = 1  # Temporal stride between clip frames.
  # 'all': every video, one label per dataset class (101 for UCF-101); 'ucf24': only the
  # annotated videos, labelled by their tube class (24 for UCF101-24).
  config.data.classes = 'all'
  # Fraction of annotated videos whose boxes are kept, chosen by a keyed hash of (video
  # name, seed): the same on every host, and nested (a smaller fraction keeps a subset).
  config.data.box_label_fraction = 1.0
  # E2E-SSL's video-level protocol: the share of training videos that keep their class
  # and boxes, chosen by a keyed hash of (video name, seed) like box_label_fraction (same
  # on every host, nested). The others keep nothing (batch key has_label false): their
  # class and box losses are masked and they feed only the consistency terms. 1.0 = every
  # video keeps its labels (the study's protocol).
  config.data.labeled_video_fraction = 1.0
  # Instead of the fraction, a file naming the labelled videos, one 'Class/v_Class_gGG_cCC'
  # per line (data/label_lists/ucf24_split1_labeled_{10,20}.txt, made by
  # tools/make_label_lists.py); '' = use labeled_video_fraction (then it must be 1.0).
  config.data.labeled_videos = ''
  # k > 0: every per-host batch holds k clips of box-kept videos (windows drawn where
  # tube 0 has boxes) and the rest from the other videos; 0 = natural mix. Under the
  # video-level protocol (labeled_video_fraction < 1 or a labeled_videos list) the k
  # clips come from videos that keep both class and boxes.
  config.data.labeled_per_batch = 0
  config.data.scale_augment = (1.0, 1.0)  # Crop side / frame side (min, max); (1, 1) = off.
  # A > 0: training clips also carry every actor's box on every clip frame for a dense
  # (tubelet) head: the video's first A tubes, under the same label protocols as the box
  # (batch keys actor_boxes, actor_boxes_flip, actor_present, actor_labels,
  # dense_labeled; docs/DESIGN.md section 3). 0 = none.
  config.data.max_actors = 0
  config.data.shuffle_buffer = 512  # Videos in the shuffle buffer.
  # Make the flipped clip on the host too (default: the train step flips on the device,
  # which halves host work and host-to-device traffic).
  config.data.host_flip = False
  # Global batches put on the devices ahead of the step that uses them, so that their
  # transfer overlaps the steps before (distributed.prefetch_to_mesh); 0 = off.
  config.data.device_prefetch = 2

  # Model (stconsist_jax.models.build_model).
  config.model = ml_collections.ConfigDict()
  config.model.depth = 34  # 10, 18, 34, 50, 101, 152, 200.
  config.model.widen_factor = 1.0
  config.model.shortcut_type = 'B'  # 'A' (2017 weights) or 'B' (2020 weights).
  config.model.conv1_t_size = 7
  config.model.conv1_t_stride = 1
  config.model.no_max_pool = False
  config.model.num_classes = 101  # Must equal the labels the data yields (checked at start).
  config.model.box_head = 'mlp'  # 'mlp' (study), 'spatial' (central map), 'tubelet' or 'none'.
  config.model.box_hidden = (256, 64, 8)  # Model-2; Model-1 is (16,). Then Dense 4 + sigmoid.
  config.model.box_activation = 'none'  # Between hidden layers (the study found none best).
  # The dense tubelet head (box_head='tubelet', models/tubelet_head.py); read only then.
  config.model.num_box_classes = 24  # Annotated (tube-label) classes; + 1 background output.
  config.model.tubelet_frames = 0  # K boxes per location: the K central clip frames; 0 = all.
  config.model.tubelet_stride = 8  # Output stride of the dense map in input pixels: 4, 8, 16.
  config.model.tubelet_width = 256  # Channels of the neck and the head's 3x3 conv.
  config.model.tubelet_top_n = 10  # Detections kept per clip after tubelet NMS (inference).
  config.model.tubelet_nms = 0.5  # NMS threshold on the tubelet IoU (mean over the K frames).
  # A per-frame presence output (docs/tubelets.md): whether the cell's actor is on each of
  # the K frames; decoded as det_present, absent frames give linking and frame-AP no box.
  config.model.tubelet_presence = False
  config.model.tubelet_presence_threshold = 0.5  # det_present: sigmoid(logit) >= this.
  # Also read the next finer backbone stage (its time steps and cells, space-to-depth).
  config.model.tubelet_finer_stage = False
  # Flip test-time augmentation (inference only, twice the forward cost): each box is the
  # mean of the clip's and of its mirror image's at the mirrored cell; the class scores
  # stay the clip's own (docs/tubelets.md).
  config.model.tubelet_flip_test = False
  # Input preset the weights expect: 'kinetics' (2020 release), 'activitynet_0_255'
  # (2017 release), 'imagenet', 'scale_0_1'.
  config.model.normalization = 'kinetics'
  config.model.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16'.
  # 3D convolutions: 'xla', 'conv2d' (sums of 2D convs over temporal taps, same numbers,
  # several times faster on XLA:CPU) or 'auto' (conv2d on CPU, xla elsewhere).
  config.model.conv_impl = 'auto'

  # Losses (stconsist_jax.training.losses): L = cls + loc + w(t) * (con_cls + con_loc), each weighted.
  config.loss = ml_collections.ConfigDict()
  config.loss.cls_weight = 1.0
  config.loss.loc_weight = 1.0
  config.loss.con_cls_weight = 1.0
  config.loss.con_loc_weight = 1.0
  config.loss.con_cls = 'js'  # 'js' (Jensen-Shannon) or 'csd' (CSD-SSD symmetric KL).
  # The dense tubelet head (model.box_head='tubelet'; stconsist_jax.training.tubelet_losses)
  # has no loc/con_loc terms: L = cls + tubelet_cls + tubelet_box + tubelet_giou
  # (+ tubelet_presence with model.tubelet_presence) + w(t) * (con_cls + con_dense_cls
  # + con_dense_box), each weighted. Other heads ignore these.
  config.loss.tubelet_cls_weight = 1.0  # Softmax focal loss over background + box classes.
  config.loss.tubelet_box_weight = 1.0  # L1 on the per-frame (dx, dy, bw, bh).
  config.loss.tubelet_giou_weight = 1.0  # 1 - GIoU of the decoded per-frame boxes.
  config.loss.tubelet_presence_weight = 1.0  # Sigmoid BCE of the per-frame presence.
  config.loss.focal_gamma = 2.0  # Focal loss gamma; 0 = cross-entropy.
  config.loss.con_dense_cls_weight = 1.0  # CSD class consistency on foreground locations.
  config.loss.con_dense_box_weight = 1.0  # CSD box consistency on foreground locations.
  config.loss.rampup_steps = 2000  # w(t) ramp-up length; 0 = full weight from the start.
  config.loss.rampdown_steps = 0  # Optional ramp-down at the end of training.
  # Mean teacher (stconsist_jax.training.teacher): d > 0 takes the consistency targets (the
  # flipped clip's logits and box) from an exponential moving average of the weights,
  # updated after each step as teacher <- d * teacher + (1 - d) * student, applied in
  # inference mode without gradient; e.g. 0.99. 0 = off (the study's symmetric terms).
  config.loss.teacher_ema = 0.0

  # Optimizer (optax); learning rate schedule on the global step.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'  # 'sgd' (momentum, as in the study) or 'adamw'.
  config.optimizer.lr = 0.01
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.b1 = 0.9  # AdamW only.
  config.optimizer.b2 = 0.999  # AdamW only.
  config.optimizer.eps = 1e-8  # AdamW only.
  config.optimizer.weight_decay = 1e-3
  config.optimizer.grad_clip_norm = 0.0  # 0 = no clipping.
  config.optimizer.schedule = 'cosine'  # 'constant', 'step' or 'cosine'.
  config.optimizer.warmup_steps = 500  # Linear warm-up (all schedules).
  config.optimizer.decay_steps = (10000, 15000)  # 'step': steps at which lr is multiplied.
  config.optimizer.decay_factor = 0.1  # 'step': the multiplier.

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 64  # Global batch (all hosts); divisible by the device count.
  config.train.num_steps = 20000
  # Optional staged schedule; empty = one stage training everything. Each stage is a
  # dict {'num_steps': int (-1 = until train.num_steps), 'freeze_backbone': bool (train
  # only the box head: backbone and classifier frozen, BatchNorm in inference mode),
  # 'loss_weights': {cls, loc, con_cls, con_loc, or the tubelet head's terms} (omitted
  # keys keep config.loss's)}.
  config.train.stages = ()
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3
  config.train.eval_every = 5000  # train_and_eval mode only; 0 = only at the end.
  # (first, num): a JAX profiler trace of the num steps from global step `first` (counted
  # from 0 across resumes) into <workdir>/profile, process 0 only, for TensorBoard's
  # profile plugin or Perfetto (*.trace.json.gz); num = 0 = off.
  config.train.profile_steps = (0, 0)
  # How long a call on a bucket workdir (checkpoint, metrics, TensorBoard, lock) may keep
  # failing or go unanswered before the run stops with one line; it is retried with
  # backoff meanwhile. Committed checkpoints are kept. Local workdirs are not affected.
  config.train.storage_timeout_seconds = 300.0

  config.eval = ml_collections.ConfigDict()
  config.eval.clips_per_video = 10
  config.eval.frame_stride = 1  # Score every k-th annotated frame (bounds the frame pass).
  # Evaluate only this many test videos, evenly spaced over the split (0 = all); the
  # report records the subset. A full R3D-34 evaluation on 2 CPU cores takes hours.
  config.eval.max_videos = 0
  # Frame-AP rule: 'act' (ACT's frameAP, as published UCF101-24 tables) or 'voc'; the
  # report holds both, this one is the headline. Frames scored: 'annotated' (every
  # annotated frame) or 'all' (every frame of the test videos, from the tube pass).
  config.eval.frame_ap_protocol = 'act'
  config.eval.frame_ap_frames = 'annotated'
  # The evaluators, in order (stconsist_jax/evaluation/evaluators/<name>.py): 'clips'
  # (accuracy, mean IoU), 'frames' (frame-AP), 'tubes' (whole test videos linked into
  # tubes, video-mAP; after 'frames'). The report and its summary hold what they yield.
  config.eval.evaluators = ('clips', 'frames', 'tubes')
  # Run a clip every k-th frame (interpolated between); a tubelet detector: clips whose K
  # output frames start every k-th frame (k <= K, so every frame gets boxes).
  config.eval.tube_frame_stride = 1
  # ACT's linking (stconsist_jax.metrics.tubes.LinkingConfig, whose defaults these are):
  # iou_threshold, max_gap, min_length, min_score, nms_threshold, top_k.
  config.eval.tubes = ml_collections.ConfigDict(
    {k: v for k, v in dataclasses.asdict(tubes.LinkingConfig()).items() if k != 'plus_one'}
  )
  # A tubelet detector's evaluator ('tubelets'; model.box_head='tubelet'): ACT's BuildTubes
  # (stconsist_jax.metrics.tubelets.TubeletLinkingConfig, whose defaults these are; max_gap
  # 0 = K, tubelet_nms_threshold 0 = none) and, for frame-AP, ACT's per-frame, per-class
  # NMS of the tubelet boxes covering a frame at frame_nms_threshold.
  config.eval.tubelets = ml_collections.ConfigDict(
    {
      **{
        k: (0 if v is None else v)
        for k, v in dataclasses.asdict(tubelets.TubeletLinkingConfig()).items()
        if k != 'plus_one'
      },
      'frame_nms_threshold': 0.3,
    }
  )
  config.eval.batch_size = 64
  # The summary metric that selects the 'best' checkpoint (one the evaluators yield).
  config.eval.best_metric = 'video_accuracy'
  config.eval.best_mode = 'max'  # 'max' or 'min'.
  # --mode=eval restores 'latest', 'best', 'init_from' (a converted classifier) or a step
  # number such as '800'; launch.py's --eval_step overrides it.
  config.eval.checkpoint_step = 'latest'
  config.eval.sheet_clips = 6  # Test clips drawn in eval/<step>/clips.png.

  # Directory written by tools/convert_torch_weights.py ('' = train from scratch).
  config.init_from = ''
  return config
