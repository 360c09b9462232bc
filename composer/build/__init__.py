"""Building: recipe tree -> modules on ``meta`` or for real -> shapes -> initialized model
(``build_from_config``), and the same sharded over a mesh (FSDP2, tensor parallel, activation
checkpointing). The record a built model carries lives here too."""
