"""Clustering primitives on the ``("data", "model")`` mesh: exact k-NN and k-means.

Both split their *rows* over the mesh's ``data`` axis (``jax.shard_map``) and never build an
``N x N`` matrix:

- ``knn(x, k, metric)`` -- exact k nearest neighbours of every row among the other rows,
  blocked over queries and database with a running ``lax.top_k`` merge.
- ``kmeans(x, k, ...)`` -- greedy k-means++ and Lloyd iterations, all ``n_init`` runs batched
  into one program, with sums reduced in a device-count independent order so that 1 and 8
  devices give bitwise identical results.
- ``knn_ivf(x, k, metric)`` -- approximate k nearest neighbours for large N: an inverted-file
  index (k-means cells, each query scores the rows of ``nprobe`` cells exactly).
"""

from vl_jax.cluster.ann import knn_ivf
from vl_jax.cluster.kmeans import kmeans
from vl_jax.cluster.knn import knn

__all__ = ["kmeans", "knn", "knn_ivf"]
