"""Ray actors and stages of the pipelines: tokenize (CPU task), `Condenser` and `Answerer` (GPU actors).

Each is thin: load once, then call the engine (beacon) and the snapshot store (snapshots). Nothing
here starts Ray or chooses resources; pipelines/ does. Import the modules you need directly
(`from beacon_actors.condenser import Condenser`): this package imports nothing on its own.
"""
