"""Pure domain logic: routing, names and arguments, message properties. No I/O."""
