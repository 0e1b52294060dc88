"""The demo's machinery, apart from the service's wiring: a seeded generator of production
traffic (`traffic`, `calls`) in every supported log format (`encoders`), a local cheap model on
llama.cpp's server in a child process (`localmodel`), an embedded Kafka-protocol broker
(`broker`), and the demo itself (`run`). Nothing outside the demo imports it, except tests and
benchmarks, which use the same traffic and broker."""
