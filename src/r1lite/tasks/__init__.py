"""Procedural tasks: datasets generated on the fly, in GSM8K's shape, with answers that can be verified."""
