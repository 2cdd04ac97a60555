"""``python -m lightning_infomem.demo``: the README's command for the main demo (`lightning_infomem.demos.demo`)."""

if __name__ == "__main__":
    from lightning_infomem.demos.demo import main

    main()
