"""Probes of what reward models and policies encode: activations collected per layer (`activations`), linear probes with
controls (`linear`), and the reward model's read-out direction against concept directions (`directions`)."""
