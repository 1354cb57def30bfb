"""Geometry every stage shares: rotation conversions, the SMPL-X skeleton tables, forward kinematics backends."""
