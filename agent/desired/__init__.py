"""The desired-state pipeline, pure: schema -> typed state -> authority -> placement -> plan."""
