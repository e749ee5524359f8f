"""The wire: messages, their codec (msgpack header + raw tensor frames), payload encodings, the parameter
layout, the ZeroMQ channel and its send buffers. No ML, no pickle."""
