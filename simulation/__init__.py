"""The engines and orchestration: the fleet engine (a real server process plus the
emulated fleet), the TensorFlow Federated engine and its reference model, schedule
replays, `fedkb simulate` and `fedkb demo`. The only layer that imports everything."""
