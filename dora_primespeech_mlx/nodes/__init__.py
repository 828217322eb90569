"""Small helper nodes for the example dataflows (run with `python -m dora_primespeech_mlx.nodes.<name>`).

- `text_sender`: sends text lines to a TTS node, one at a time, waiting for each `segment_complete`.
- `segmenter`: a stand-in for mofa-studio's multi-text-segmenter: a script of "speaker: text" lines sent
  to several TTS nodes, each released by the previous line's `segment_complete` and `audio_complete`.
- `recorder`: a stand-in for the audio player: writes the received audio to a WAV file, answers each
  audio message with `audio_complete`, and writes a JSON summary of everything it received.
"""
