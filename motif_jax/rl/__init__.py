"""Reinforcement learning: rewards, the code sandbox and the RL step pieces."""
