"""Pure (AiiDA-free) dataset augmentation: supercells, distortions, clusters, slabs, alloys."""
