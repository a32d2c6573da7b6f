"""The static pass: never imports torch or the code it checks."""
