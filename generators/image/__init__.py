"""Image models: a class-conditional GAN and VAE, their data, training and evaluation."""
