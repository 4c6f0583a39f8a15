import requests
import json

# Configuration
BASE_URL = "http://localhost:8000"
TOKEN = "your-jwt-token"

headers = {
    "Authorization": f"Bearer {TOKEN}",
    "Content-Type": "application/json"
}

# Create build
build_data = {
    "project_name": "my-app",
    "goal": "Add user authentication",
    "parameters": {"framework": "fastapi"}
}

resp = requests.post(f"{BASE_URL}/api/build/", json=build_data, headers=headers)
build = resp.json()
task_id = build["task_id"]

# Poll for status
while True:
    status_resp = requests.get(
        f"{BASE_URL}/api/build/{task_id}",
        headers=headers
    )
    status_data = status_resp.json()
    
    print(f"Status: {status_data['status']} ({status_data['progress']}%)")
    
    if status_data['status'] in ['completed', 'failed', 'cancelled']:
        print("Build finished:", status_data['results'])
        break
    
    time.sleep(2)
