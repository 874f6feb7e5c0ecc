"""The networks: UNet, ResNet34-UNet (a hand-built ResNet-34 encoder), their layers and the registry of names."""
