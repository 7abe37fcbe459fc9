"""The tiny configs that the crosscheck cases, the tests and the benchmark's smoke size start
from: each user adds only what it changes (``dict(tiny.VISION, num_labels=3)``)."""

# hidden 32 with 4 heads of 8; 37 (prime) catches a feed-forward size mixed up with another
ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)

TEXT = dict(ENCODER, vocab_size=99, max_position_embeddings=40)

# two convs (stride 10 overall), a 2-group positional conv
AUDIO = dict(ENCODER, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=2,
             conv_pos_kernel_size=4, num_conv_pos_embedding_groups=2)
# ... plus what the CTC, x-vector and classification heads size
AUDIO_HEADS = dict(AUDIO, tdnn_dim=(16, 16, 20), tdnn_kernel=(3, 1, 1), tdnn_dilation=(1, 2, 1),
                   xvector_output_dim=12, classifier_proj_size=10, vocab_size=11)

# 4x4 patches of 8 pixels; four layers so segmentation reads four different feature maps
VISION = dict(ENCODER, num_hidden_layers=4, image_size=32, patch_size=8, out_indices=[1, 2, 3, 4],
              auxiliary_channels=16, pool_scales=[1, 2])
