"""The recipe and budget every arm of the evidence grids shares (ablation, compare, compression).

ResNet-20 on the CIFAR-10 folder split (45k train / class-balanced 5k validation), SGD +
Nesterov, weight decay 5e-4, cosine decay after a short warm-up, validation after the last
step. The budget is what this project's 2-core CPU affords for every arm x 3 seeds (about
180 images/s for ResNet-20): 200 steps of batch 64 (12,800 images, 0.28 epochs), the
smaller batch giving more updates for the images; lr 0.05, linearly scaled from 0.1 at 128.
At this budget the grids describe the start of training and decide nothing. The GPU campaign
(configs/campaign.py, run by experiments/campaign.sh) trains their arms at a real budget, 50
epochs of the standard recipe.
"""
from sila_jax.configs import cifar10_folder

CPU_STEPS = 200
SEEDS = (0, 1, 2)


def get_config():
  config = cifar10_folder.get_config()
  config.num_train_steps = CPU_STEPS
  config.batch_size = 64
  config.optimizer.learning_rate = 0.05
  config.optimizer.warmup_epochs = 0.05
  config.eval_batch_size = 500
  config.log_every_steps = 10
  config.checkpoint_every_steps = 50
  # The SiLa settings the grids measured from, pinned: the defaults in configs/default.py
  # may follow later evidence and must not move the grids' runs.
  config.sila.update(enabled=True, num_heads=1, head='twin', attach='features', variant='twin',
                     weight=1.0, kl_weight=0.0, temperature=1.0)
  return config
