"""Audio input and output: WAV and other container decoding, resampling, VAD and segmentation."""
