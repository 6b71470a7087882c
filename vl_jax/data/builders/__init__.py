"""Our TFDS builders (importing this package registers them with TFDS).

* ``imagenet_subset`` -- class subsets of a local ILSVRC-2012 copy (manual_dir);
* ``easy_vqa_shapes`` -- the easy-VQA images with shape/colour labels (PyPI ``easy-vqa``);
* ``image_folder`` -- any local class-folder tree (configs made by ``image_folder_builder``).

All write array_record and are read with ``tfds.data_source``; none needs TensorFlow.
"""

from vl_jax.data.builders.easy_vqa_shapes import EasyVqaShapes
from vl_jax.data.builders.image_folder import ImageFolder, image_folder_builder
from vl_jax.data.builders.imagenet_subset import ImagenetSubset

__all__ = ["EasyVqaShapes", "ImageFolder", "ImagenetSubset", "image_folder_builder"]
