from r1lite.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
