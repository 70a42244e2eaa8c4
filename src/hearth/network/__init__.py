"""Per-VM network namespaces: a slot pool, and the netns + veth + tap each VM runs in."""
