"""MLX models, language-blind: ids and features in, codes or audio out."""
