"""Evaluation of a trained model, rollouts to files, rendering (research/neurok-paper.md s6-7).

config         EvalConfig (neurok eval), SimulateConfig (neurok simulate)
metrics        Chamfer on fixed surface samples, F-score, vertex error, volumetric IoU
baselines      PCA deformation subspace and nearest-neighbour retrieval, fitted on the training split
evaluate       the protocol: reconstruction, IK vs baselines, rollout fidelity and energy, speed vs MuJoCo
report         metrics table (markdown + JSON), plots, MLflow logging
rollout_files  simulate a user's mesh (simulate_mesh = prepare_mesh + simulate_prepared) and write NPZ,
               OBJ frames, video, viewer (write_rollout)
meshes         reading and checking a user's mesh
render         headless CPU frames, MP4/GIF
viewer         the self-contained interactive HTML viewer
"""
