"""The PyBullet racing env: the physics world and sensors (`sim`) and racecar_gym's task and spaces (`env`)."""
