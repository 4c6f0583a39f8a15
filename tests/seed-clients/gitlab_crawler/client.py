import requests
import websocket
import json

class GitLabCrawlerAPI:
    def __init__(self, base_url, api_token):
        self.base_url = base_url
        self.headers = {
            'Authorization': f'Bearer {api_token}',
            'Content-Type': 'application/json'
        }
    
    def create_task(self, task_data):
        response = requests.post(
            f'{self.base_url}/api/internal2/tasks',
            headers=self.headers,
            json=task_data
        )
        return response.json()
    
    def update_progress(self, task_id, progress_data):
        response = requests.post(
            f'{self.base_url}/api/internal2/tasks/{task_id}/progress',
            headers=self.headers,
            json=progress_data
        )
        return response.json()
    
    def get_health(self):
        response = requests.get(
            f'{self.base_url}/api/internal2/health',
            headers=self.headers
        )
        return response.json()
