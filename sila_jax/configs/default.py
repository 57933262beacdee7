"""Every field a run reads, with its default: ResNet-20 + one twin Siamese head on CIFAR-10."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data. dataset: 'cifar10' | 'cifar100' (TFDS) | 'folder' (data_dir/<split>/<class>/*.jpg).
  config.dataset = 'cifar10'
  config.data_dir = ''  # TFDS data directory, or the ImageFolder root; '' = TFDS default.
  config.train_split = 'train'
  config.eval_split = 'test'  # Folder splits slice within each class: 'train[4500:]'.
  config.num_classes = 10
  config.image_size = 32
  config.normalize_mean = (0.4914, 0.4822, 0.4465)  # CIFAR-10 per-channel statistics.
  config.normalize_std = (0.2470, 0.2435, 0.2616)
  # Keep the decoded splits on the accelerators and draw and augment each batch inside the
  # train step; False gathers each batch on the host (for splits too large for the devices).
  config.on_device = True

  # Model. model: resnet8/20/32/44/56/110, resnet18, wrn16_4, wrn28_10, and dynamic-convolution
  # dy_resnet8/20/32/56, dy_resnet18.
  config.model = 'resnet20'
  config.width = 1.0  # Multiplies every channel count.
  config.dropout_rate = 0.0  # Wide ResNets only.
  # Dynamic convolution (dy_* models): K kernels mixed per sample by an attention whose
  # softmax temperature (the attention temperature) anneals linearly from tau_start to 1
  # over tau_epochs.
  config.dynamic = ml_collections.ConfigDict()
  config.dynamic.num_kernels = 4
  config.dynamic.tau_start = 30.0
  config.dynamic.tau_epochs = 10.0

  # Method (sila_jax/methods/): 'sila' | 'plain' | 'one' | 'clilr' | 'byot'. Every method
  # trains dml.num_peers peers.
  config.method = 'sila'

  # SiLa (../shared/SILA.md). enabled=False is plain cross-entropy training. The defaults are
  # SiLa as SILA.md defines it: one twin head on the final features, lambda = 1, no KL. The
  # quarter-epoch CPU ablation (results/ablation/) decided nothing; the GPU campaign's
  # real-budget blocks (results/campaign/) are what may move these.
  config.sila = ml_collections.ConfigDict()
  config.sila.enabled = True
  config.sila.num_heads = 1
  config.sila.head = 'twin'  # 'twin' (the main head's architecture) | 'mlp'.
  config.sila.attach = 'features'  # 'features' | 'stage<i>' (through an adapter).
  config.sila.variant = 'twin'  # 'twin' | 'joint'.
  config.sila.weight = 1.0  # lambda.
  config.sila.kl_weight = 0.0  # beta; 0 turns head-to-head consistency off.
  config.sila.temperature = 1.0  # T of the consistency term.
  # Backpropagation rescaling (CL-ILR, SILA.md "The step-size effect and its controls"): at
  # the point where the Siamese heads attach, the gradient all heads send back into the
  # shared backbone is multiplied by 1 / (1 + weight * num_heads), so heads that agree leave
  # the backbone's step equal to plain training's. Identity forward. Twin variant only.
  config.sila.rescale_backbone_grad = False
  # ONE (Lan et al. 2018; CIFAR ResNets): num_branches copies of the last stage and head on
  # the shared lower stages, gated into an ensemble teacher each branch distils from at T.
  config.one = ml_collections.ConfigDict()
  config.one.num_branches = 3
  config.one.temperature = 3.0
  # Collaborative learning with backpropagation rescaling (CL-ILR, Song & Chai 2018; CIFAR
  # ResNets): num_heads copies of the last stage and head, the shared stages' gradient
  # divided by num_heads; head i: beta CE + (1 - beta) T^2 KL(mean of the others || it).
  config.clilr = ml_collections.ConfigDict()
  config.clilr.num_heads = 2
  config.clilr.beta = 0.5
  config.clilr.temperature = 2.0
  # Be Your Own Teacher (Zhang et al. 2019): a shallow classifier after every stage but the
  # last, each (1 - alpha) CE + alpha T^2 KL(deepest || it) + feature_weight * feature hint.
  config.byot = ml_collections.ConfigDict()
  config.byot.alpha = 0.1
  config.byot.temperature = 3.0
  config.byot.feature_weight = 1e-6
  config.label_smoothing = 0.0  # Applies to every cross-entropy term alike.
  # Multiplies the whole training loss, not the weight decay: with SGD and momentum, scale s
  # is learning rate x s and weight decay / s. The ablation's step-size control: plain
  # training at 1 + sila.weight gets the (1 + lambda)-fold backbone gradient twin SiLa gives.
  config.loss_scale = 1.0

  # Deep Mutual Learning (SILA.md "SiLa + DML"): num_peers > 1 trains that many peers
  # together, each with its own optimizer state (and Siamese heads when sila.enabled); each
  # adds weight * mean_j T^2 KL(sg(p_j) || p_i) on its main head. 1 is single-model training.
  config.dml = ml_collections.ConfigDict()
  config.dml.num_peers = 1
  config.dml.models = ()  # One model name per peer (heterogeneous peers); () = `model` for all.
  config.dml.temperature = 1.0
  config.dml.weight = 1.0
  config.dml.independent_augment = False  # Each peer its own augmentation of the same images.

  # Many runs as one computation (sila_jax/training/runs.py): num_runs R trains R independent runs
  # together, stacked along a leading run axis. Run r uses seed + r; each field of `runs`,
  # when not (), lists one value per run of the config field it names (sila_weight ->
  # sila.weight), so arms that differ only in these share one computation.
  config.num_runs = 1
  config.runs = ml_collections.ConfigDict()
  config.runs.seed = ()
  config.runs.sila_weight = ()
  config.runs.sila_kl_weight = ()
  config.runs.dml_weight = ()
  config.runs.label_smoothing = ()
  config.runs.loss_scale = ()
  config.runs.learning_rate = ()  # optimizer.learning_rate: the schedule's peak.
  config.runs.weight_decay = ()  # optimizer.weight_decay.
  config.runs.rescale_backbone_grad = ()  # sila.rescale_backbone_grad.
  config.runs.one_temperature = ()  # one.temperature.
  config.runs.clilr_beta = ()  # clilr.beta.
  config.runs.clilr_temperature = ()  # clilr.temperature.
  config.runs.byot_alpha = ()  # byot.alpha.
  config.runs.byot_temperature = ()  # byot.temperature.
  config.runs.byot_feature_weight = ()  # byot.feature_weight.

  # Optimisation.
  config.batch_size = 128  # Global, over all devices.
  config.num_epochs = 200
  config.num_train_steps = -1  # -1: num_epochs of the training split.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-4  # Kernels only.
  config.optimizer.schedule = 'cosine'  # 'cosine' | 'step'.
  config.optimizer.warmup_epochs = 1.0
  config.optimizer.lr_boundaries = (0.5, 0.75)  # 'step': fractions of the run.
  config.optimizer.lr_decay_factor = 0.1

  # Running.
  # Compute dtype of convolutions and matmuls: 'float32' | 'bfloat16'. Parameters, optimizer
  # state, BatchNorm statistics and losses stay float32 either way.
  config.dtype = 'float32'
  # How two kernels compute (same values, different speed per backend); 'auto' picks the
  # backend's measured fastest (model.AUTO_KERNELS, benchmarks/kernels.py).
  config.kernels = ml_collections.ConfigDict()
  config.kernels.peer_conv = 'auto'  # Under DML's vmap: 'auto' | 'sliced' | 'grouped'.
  config.kernels.dynamic_conv = 'auto'  # DynamicConv: 'auto' | 'taps' | 'grouped'.
  config.parallel = 'shard_map'  # 'shard_map' | 'pmap' (one process only).
  # JAX's distributed runtime: 'auto' starts it under srun, on a Cloud TPU VM or with
  # JAX_COORDINATOR_ADDRESS set; 'on' always; 'off' never (one process).
  config.distributed = 'auto'
  config.eval_batch_size = 256  # Global; must divide by the device count.
  config.log_every_steps = 100
  config.eval_every_steps = -1  # -1: once per epoch; 0: never.
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3  # The newest ones; <workdir>/best holds the best one besides.
  # 'a,b': a jax.profiler trace of steps a+1..b in <workdir>/profile (TensorBoard's profile
  # plugin or Perfetto); '' for none.
  config.profile_steps = ''
  config.seed = 0
  return config
