"""Model parallelism: the paper's two-GPU split of the network into towers (section 3.2).

Data parallelism (torch.distributed, torchrun) lives with training, in train/distributed.py.
"""

from .model_parallel import TwoTowerAlexNet, merge_towers, parse_devices, split_towers

__all__ = ["TwoTowerAlexNet", "merge_towers", "parse_devices", "split_towers"]
