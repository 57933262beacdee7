"""The input: image folders and TFDS splits decoded, sharded on the devices, batches drawn
and augmented."""
