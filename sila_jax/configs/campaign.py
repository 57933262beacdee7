"""The evidence campaign (issue 19): blocks of arms x seeds at the standard recipe, in priority
order, that every GPU call advances (python -m sila_jax.experiments.campaign;
experiments/campaign.sh).

The recipe is configs/cifar10.py's (batch 128, SGD + Nesterov at lr 0.1, weight decay 5e-4,
cosine decay after one warm-up epoch) on the CIFAR-10 folder split of configs/cifar10_folder.py
(45k training images, the class-balanced 5k validation slice), ResNet-20 in bfloat16.

Every block pins SiLa as ../shared/SILA.md defines it (one twin head on the final features,
lambda = 1, no KL), so the defaults of configs/default.py can follow the evidence without
moving the campaign's runs. 'plain' arms keep the Siamese head but give it weight 0 (it
receives no gradient, the backbone trains on the main head alone), so they share one
computation with the SiLa arms; the step-size controls (SILA.md "The step-size effect and its
controls") are plain at loss_scale 2 and at learning rates 0.2 and 0.05, and SiLa with
backpropagation rescaling (sila.rescale_backbone_grad).

The campaign gives every run its --data_dir and the fastest measured form of the run axis'
convolutions (kernels.peer_conv); neither is part of a run's identity.
"""
from sila_jax.configs import cifar10_folder
from sila_jax.configs.grids import ablation
from sila_jax.configs.grids import compare

STEPS_PER_EPOCH = 45_000 // 128  # 351: the 45k split at batch 128 on one device.
EVAL_EVERY_EPOCHS = 5  # 5k validation images: a fraction of a second on a GPU.
FIVE_SEEDS = (0, 1, 2, 3, 4)
THREE_SEEDS = (0, 1, 2)

PLAIN = {'sila.weight': 0.0}
SILA = {}
SILA_RESCALED = {'sila.rescale_backbone_grad': True}
PLAIN_X2 = {'sila.weight': 0.0, 'loss_scale': 2.0}  # 1 + lambda * num_heads = 2.


def recipe(epochs: int, model: str = 'resnet20'):
  """The standard recipe for `epochs` epochs of `model`, SiLa pinned to SILA.md's definition."""
  config = cifar10_folder.get_config()
  config.model = model
  config.dtype = 'bfloat16'
  config.num_epochs = epochs
  config.num_train_steps = -1
  config.eval_every_steps = EVAL_EVERY_EPOCHS * STEPS_PER_EPOCH
  config.eval_batch_size = 1000
  config.log_every_steps = 200
  config.checkpoint_every_steps = 2000  # SIGTERM saves besides; this bounds a SIGKILL's loss.
  config.keep_checkpoints = 1
  config.sila.update(enabled=True, num_heads=1, head='twin', attach='features', variant='twin',
                     weight=1.0, kl_weight=0.0, temperature=1.0, rescale_backbone_grad=False)
  return config


def headline_arms(with_tuned_lr: bool) -> dict:
  """Plain, SiLa, SiLa rescaled, the loss-scale control, and optionally the tuned-lr plain."""
  arms = {'plain': PLAIN, 'sila': SILA, 'sila_rescaled': SILA_RESCALED, 'plain_x2': PLAIN_X2}
  if with_tuned_lr:
    arms['plain_lr0.2'] = {**PLAIN, 'optimizer.learning_rate': 0.2}
    arms['plain_lr0.05'] = {**PLAIN, 'optimizer.learning_rate': 0.05}
  return arms


def get_campaign():
  """The blocks in priority order: {'name', 'title', 'grid'} (grid as
  experiments.planning.check_grid takes it)."""
  return [
      {'name': 'headline_50', 'title': 'Headline, 50 epochs: SiLa against plain training and '
                                       'the step-size controls',
       'grid': {
           'config': recipe(50),
           'arms': {**headline_arms(with_tuned_lr=True),
                    # Its own computation: dtype is not a per-run field.
                    'plain_f32': {**PLAIN, 'dtype': 'float32'}},
           'seeds': FIVE_SEEDS,
           'baselines': ('plain', 'plain_x2'),
           'export_seeds': (0,),
           'caption': 'ResNet-20, 50 epochs of the standard recipe: plain, SiLa (one twin head '
                      'on the final features, lambda = 1), SiLa with backpropagation rescaling, '
                      'plain with its loss x 2, plain at lr 0.2 and 0.05, and plain in float32 '
                      '(what bfloat16 costs).'}},
      {'name': 'headline_200', 'title': 'Headline, 200 epochs: the full standard recipe',
       'grid': {
           'config': recipe(200),
           'arms': headline_arms(with_tuned_lr=False),
           'seeds': THREE_SEEDS,
           'baselines': ('plain', 'plain_x2'),
           'export_seeds': (0,),
           'caption': 'ResNet-20, 200 epochs of the standard recipe (published plain ResNet-20: '
                      '91.25 % He et al., 91.73 % akamaster; JPEG storage costs a little).'}},
      {'name': 'ablation_50', 'title': 'Ablation, 50 epochs: which SiLa variant',
       'grid': {
           'config': recipe(50),
           'arms': {**ablation.get_grid()['arms'],
                    'twin_1_stage2_rescaled': {'sila.attach': 'stage2',
                                               'sila.rescale_backbone_grad': True}},
           'seeds': THREE_SEEDS,
           'baselines': ('plain', 'plain_x2'),
           'caption': 'SiLa variants (configs/grids/ablation.py) at 50 epochs of the standard '
                      'recipe, plus the stage-2 head with backpropagation rescaling.'}},
      {'name': 'compression_50', 'title': 'Compression, 50 epochs: half-width ResNet-20',
       'grid': {
           'config': recipe(50),
           'arms': {'plain_w1': PLAIN,
                    'plain_w0.5': {**PLAIN, 'width': 0.5},
                    'sila_w0.5': {'width': 0.5},
                    'sila_rescaled_w0.5': {**SILA_RESCALED, 'width': 0.5}},
           'seeds': THREE_SEEDS,
           'baselines': ('plain_w0.5', 'plain_w1'),
           'caption': 'The compression claim: half-width ResNet-20 with SiLa (and with '
                      'rescaling) against half- and full-width plain ResNet-20, 50 epochs.'}},
      {'name': 'compare_50', 'title': 'SiLa, DML, DY-ResNet-20, ONE, CL-ILR and BYOT, 50 epochs',
       'grid': {
           'config': recipe(50),
           'arms': compare.get_grid()['arms'],
           'seeds': THREE_SEEDS,
           'baselines': ('plain',),
           'caption': 'SiLa against and with DML (2 peers; peer 0 reported), DY-ResNet-20 '
                      "plain and with SiLa, and SiLa's neighbours ONE (3 branches), CL-ILR (2 "
                      'heads) and BYOT, 50 epochs of the standard recipe.'}},
      {'name': 'resnet56_200', 'title': 'Headline on ResNet-56, 200 epochs',
       'grid': {
           'config': recipe(200, model='resnet56'),
           'arms': headline_arms(with_tuned_lr=False),
           'seeds': THREE_SEEDS,
           'baselines': ('plain', 'plain_x2'),
           'caption': 'ResNet-56, 200 epochs of the standard recipe: plain, SiLa, SiLa with '
                      'rescaling and plain with its loss x 2.'}},
  ]
