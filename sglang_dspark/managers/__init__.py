"""Request lifecycle: io structs, schedule batch, scheduler."""
