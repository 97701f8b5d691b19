"""Generator families behind one interface (`GeneratorFamily` in `base`).

A family module builds its network from a preset (`nets/` holds the network only), supplies the
objective the shared loop (`imagesynth.train.train`) minimises, trains into a model folder and
loads it back as an object with `sample(n, generators, condition)` -> images [n, 3, H, W] in
[-1, 1] (image i drawn from generators[i] alone) and, where the family has a latent,
`encode(images)` / `decode(latent)`. Import a family's module directly, e.g.
`imagesynth.families.flow`, so this package stays light.
"""

from .base import GeneratorFamily, LatentFamily

__all__ = ["GeneratorFamily", "LatentFamily"]
