"""PPO: the math (ppo), observation/reward statistics (normalize), the jitted and host training engines, evaluation."""
