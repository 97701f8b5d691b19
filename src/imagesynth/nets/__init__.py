"""Network builders: CLIP towers, UNets, autoencoders, GANs."""
