"""What a segmentation run trains with: the patch loader with foreground oversampling, spatial and
intensity augmentation, Dice + CE with deep supervision, and the final validation of a fold."""
