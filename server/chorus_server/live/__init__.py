"""Live transcription: streamed file transcripts (SSE), realtime sessions over WebSocket, and the incremental CTC
decoding both rely on."""
