"""Datasets: specs of what cnnpipe can fetch, decoding, splitting and device-resident loading."""
